//! The results store: every eval, its work units (item × epoch), their
//! claims and results. SQLite by default (one file, e.g. `runs/redraft.db`);
//! PostgreSQL (`postgres://…`, feature `postgres`) when many machines work
//! on one eval.
//!
//! **Invariants:**
//! - A unit has one row; finishing writes its result once (`status <>
//!   'done'` guards the update), so a unit is never counted twice, even
//!   when a claim expired and two workers ran it.
//! - A result is durable when `finish` returns (one transaction per batch:
//!   group commit); `kill -9` loses at most the units in flight, which stay
//!   claimed until their lease ends or, on the same host, until a new
//!   worker sees their process is gone.
//! - The schema carries a version; a store written by a newer redraft is
//!   refused with a message, never misread.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::data::Item;
use super::{ItemResult, Totals};

#[cfg(feature = "postgres")]
pub mod postgres;
mod shared;
mod sqlite;

pub use shared::SharedStore;
pub use sqlite::SqliteStore;

/// The schema version this build writes; it reads every version up to it.
/// 2 added `units.shard_hash` (a shard claims only its own units).
pub const SCHEMA_VERSION: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("results store {store}: {message}")]
    Db { store: String, message: String },
    #[error(
        "results store {store} has schema version {found}, newer than this redraft reads ({SCHEMA_VERSION}); upgrade redraft or use another store"
    )]
    Newer { store: String, found: i64 },
    #[error("results store {store}: no eval `{id}`{hint}")]
    NoEval {
        store: String,
        id: String,
        hint: String,
    },
    #[error("results store {store}: `{id}` matches several evals: {matches}; give more of an id")]
    Ambiguous {
        store: String,
        id: String,
        matches: String,
    },
    #[error("results store {store}: a stored record is unreadable: {message}")]
    Corrupt { store: String, message: String },
    #[error("`{0}`: PostgreSQL stores need redraft built with the `postgres` feature")]
    NoPostgres(String),
    #[error(
        "results store {store} does not exist (only `redraft eval` creates a store); check --store, or run an eval first"
    )]
    Missing { store: String },
    #[error(
        "{store} is not a redraft results store: it holds {found} but no `redraft_meta`; nothing was written to it (give another --store)"
    )]
    Foreign { store: String, found: String },
    #[error(
        "results store {store} is damaged ({message}); nothing was written to it: restore it from a copy, or give another --store"
    )]
    Damaged { store: String, message: String },
    #[error(
        "results store {store}: no answer within {after:?} ({what}); raise --store-timeout or check the server"
    )]
    Timeout {
        store: String,
        what: &'static str,
        after: Duration,
    },
}

/// An eval as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Derived from what determines the results (see `EvalPlan::id`).
    pub id: String,
    pub name: String,
    pub workflow: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The workflow and prompts as run, models, data, scorer, command
    /// line, versions (`EvalMeta` as JSON).
    pub meta: Value,
}

/// One line of `redraft runs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalListing {
    pub id: String,
    pub name: String,
    pub workflow: String,
    pub models: String,
    pub created_at: i64,
    pub units: i64,
    pub done: i64,
    pub failed: i64,
    pub mean_score: Option<f64>,
}

/// A unit of work handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub item: Item,
    pub epoch: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counts {
    pub pending: i64,
    pub claimed: i64,
    pub done: i64,
    pub failed: i64,
}

impl Counts {
    pub fn total(&self) -> i64 {
        self.pending + self.claimed + self.done + self.failed
    }
}

/// A stored unit with its result, for metrics and reports.
#[derive(Debug, Clone)]
pub struct UnitRecord {
    pub item: Item,
    pub epoch: u32,
    pub status: String,
    pub result: Option<ItemResult>,
}

/// Who holds a claim: host, process id and start time, so a new worker on
/// the same host can tell a dead one's claims from a live one's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerId {
    pub host: String,
    pub pid: u32,
    pub started_ms: i64,
}

impl WorkerId {
    pub fn this_process() -> WorkerId {
        WorkerId {
            host: hostname(),
            pid: std::process::id(),
            started_ms: now_ms(),
        }
    }

    pub fn parse(s: &str) -> Option<WorkerId> {
        let mut parts = s.rsplitn(3, '/');
        let started_ms = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        Some(WorkerId {
            host: parts.next()?.to_string(),
            pid,
            started_ms,
        })
    }

    /// Whether this worker is certainly gone: on this host and its process
    /// does not exist. Workers elsewhere are judged by their leases.
    pub fn is_dead_here(&self) -> bool {
        self.host == hostname() && !process_alive(self.pid)
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.host, self.pid, self.started_ms)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether a process exists and is not a zombie (killed, not yet reaped:
/// its claims are as dead as it is).
fn process_alive(pid: u32) -> bool {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last `)`.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        return !matches!(state, Some('Z' | 'X'));
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A results store. Methods are blocking; the eval runner calls them from a
/// thread of its own.
pub trait Store: Send {
    /// Where it is, for messages (no password).
    fn location(&self) -> String;
    /// Records the eval unless it exists; returns the stored record.
    fn open_eval(&mut self, eval: &EvalRecord) -> Result<EvalRecord, StoreError>;
    /// Adds units that are not there yet; returns how many were new.
    fn add_units(&mut self, eval: &str, units: &[Unit]) -> Result<usize, StoreError>;
    /// Moves the eval `id` and its units to a new id (returned), named as
    /// replaced, so that `id` starts over empty (`--fresh`); nothing is
    /// deleted. `None` when there is no eval `id`.
    fn archive_eval(&mut self, id: &str) -> Result<Option<String>, StoreError>;
    /// Makes failed units pending again (`--retry-failed`).
    fn reset_failed(&mut self, eval: &str) -> Result<usize, StoreError>;
    /// Releases claims of workers on this host whose process is gone.
    fn release_dead(&mut self, eval: &str, me: &WorkerId) -> Result<usize, StoreError>;
    /// Claims up to `n` pending units (or units whose lease ended); with
    /// `shard = Some((k, n))` only units whose item is in shard `k` of `n`
    /// ([`super::shard_of`]): a shard never runs another shard's units.
    fn claim(
        &mut self,
        eval: &str,
        worker: &WorkerId,
        n: usize,
        lease_ms: i64,
        shard: Option<(u32, u32)>,
    ) -> Result<Vec<Unit>, StoreError>;
    /// Extends this worker's leases.
    fn renew(&mut self, eval: &str, worker: &WorkerId, lease_ms: i64) -> Result<(), StoreError>;
    /// Stores results in one transaction.
    fn finish(&mut self, eval: &str, results: &[ItemResult]) -> Result<(), StoreError>;
    /// Gives claimed units back (interrupted runs).
    fn release(
        &mut self,
        eval: &str,
        worker: &WorkerId,
        units: &[(String, u32)],
    ) -> Result<(), StoreError>;
    fn counts(&mut self, eval: &str) -> Result<Counts, StoreError>;
    /// What finished units of the eval spent (for the total budget).
    fn spent(&mut self, eval: &str) -> Result<Totals, StoreError>;
    fn evals(&mut self) -> Result<Vec<EvalListing>, StoreError>;
    /// An eval by id, unique id prefix or unique name.
    fn eval(&mut self, id: &str) -> Result<EvalRecord, StoreError>;
    /// Every unit with its result; the results' summaries and events only
    /// with `full` (they are most of the bytes).
    fn units(&mut self, eval: &str, full: bool) -> Result<Vec<UnitRecord>, StoreError>;
    /// One unit with its result, summary and events (`None` when the eval
    /// has no such item and epoch).
    fn unit(
        &mut self,
        eval: &str,
        item: &str,
        epoch: u32,
    ) -> Result<Option<UnitRecord>, StoreError>;
    /// Appends a record to the journal `(kind, key)` (a calibration's
    /// generations, a learned mapping); returns its sequence number (from 0).
    fn append_record(&mut self, kind: &str, key: &str, value: &Value) -> Result<i64, StoreError>;
    /// A journal's records, oldest first (empty if there is none).
    fn records(&mut self, kind: &str, key: &str) -> Result<Vec<Value>, StoreError>;
    /// The keys of a kind's journals, sorted.
    fn record_keys(&mut self, kind: &str) -> Result<Vec<String>, StoreError>;
}

/// Whether a command may change the store. Read-only commands (`runs`,
/// `report`, `compare`) open with [`Access::ReadOnly`]: a store that does
/// not exist is an error, never created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    #[default]
    ReadWrite,
    ReadOnly,
}

/// How a store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    pub access: Access,
    /// How long connecting to a server may take, handshake and
    /// authentication included (PostgreSQL; `connect_timeout` in the URL
    /// when this is `None`, else 10 s).
    pub connect_timeout: Option<Duration>,
    /// How long one statement may wait for its answer: a PostgreSQL server
    /// that stops answering, or another process holding a SQLite file's
    /// lock. Then the call fails with [`StoreError::Timeout`].
    pub statement_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            access: Access::ReadWrite,
            connect_timeout: None,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
        }
    }
}

/// Connecting to a PostgreSQL server when neither a flag nor the URL says.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One statement's wait when no flag says.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `location` names a PostgreSQL store.
pub fn is_postgres(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// Opens a store for reading and writing with default timeouts.
pub fn open(location: &str) -> Result<Box<dyn Store>, StoreError> {
    open_with(location, &StoreOptions::default())
}

/// Opens a store: `postgres://…`/`postgresql://…`, else a SQLite file.
///
/// Before anything is written, the store's identity and schema version are
/// read: a file or database that is someone else's, damaged, or written by
/// a newer redraft is refused with what was found, and left as it was.
pub fn open_with(location: &str, opts: &StoreOptions) -> Result<Box<dyn Store>, StoreError> {
    if is_postgres(location) {
        #[cfg(feature = "postgres")]
        return Ok(Box::new(postgres::PgStore::connect(location, opts)?));
        #[cfg(not(feature = "postgres"))]
        return Err(StoreError::NoPostgres(
            crate::redact::url(location).into_owned(),
        ));
    }
    Ok(Box::new(SqliteStore::open_with(Path::new(location), opts)?))
}

/// Opens the response cache at `location`: the tables `redraft_responses`
/// and `redraft_files` of a PostgreSQL results store (`postgres://…`,
/// shared by every worker of an eval), else a SQLite file.
pub fn open_cache(
    location: &str,
    max_bytes: u64,
    opts: &StoreOptions,
) -> Result<crate::cache::ResponseCache, crate::cache::CacheError> {
    if is_postgres(location) {
        #[cfg(feature = "postgres")]
        return Ok(crate::cache::ResponseCache::new(
            std::sync::Arc::new(postgres::PgCache::connect(location, opts)?),
            max_bytes,
        ));
        #[cfg(not(feature = "postgres"))]
        return Err(crate::cache::CacheError::Db {
            location: crate::redact::url(location).into_owned(),
            message: "PostgreSQL caches need redraft built with the `postgres` feature".into(),
        });
    }
    let _ = opts;
    crate::cache::ResponseCache::open_sqlite(Path::new(location), max_bytes)
}

/// What a store holds, read before anything is written to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// No tables at all: a new store.
    Empty,
    /// redraft's tables at this schema version.
    Ours(i64),
    /// Tables, none of them redraft's bookkeeping: someone else's database.
    Foreign(Vec<String>),
    /// redraft's tables, but not whole or not readable.
    Damaged(String),
}

/// The tables every redraft store has.
pub(crate) const TABLES: [&str; 4] = ["redraft_meta", "evals", "units", "records"];

impl Identity {
    /// Reads an identity from a store's table names and its
    /// `schema_version` rows (`None`: no `redraft_meta` to read them from).
    pub(crate) fn of(tables: Vec<String>, versions: Option<Vec<String>>) -> Identity {
        if tables.is_empty() {
            return Identity::Empty;
        }
        let Some(versions) = versions else {
            return Identity::Foreign(tables);
        };
        let version = match versions.as_slice() {
            [] => return Identity::Damaged("redraft_meta holds no schema version".into()),
            [one] => match one.trim().parse::<i64>() {
                Ok(v) if v >= 1 => v,
                _ => {
                    return Identity::Damaged(format!(
                        "redraft_meta holds an unreadable schema version {one:?}"
                    ));
                }
            },
            many => {
                return Identity::Damaged(format!(
                    "redraft_meta holds {} schema versions",
                    many.len()
                ));
            }
        };
        let missing: Vec<&str> = TABLES
            .iter()
            .filter(|t| !tables.iter().any(|have| have == *t))
            .copied()
            .collect();
        if !missing.is_empty() && version <= SCHEMA_VERSION {
            return Identity::Damaged(format!("the table(s) {} are missing", missing.join(", ")));
        }
        Identity::Ours(version)
    }

    /// The error for a store that must not be used, if this is one.
    pub(crate) fn refusal(&self, store: &str) -> Option<StoreError> {
        match self {
            Identity::Ours(v) if *v > SCHEMA_VERSION => Some(StoreError::Newer {
                store: store.to_string(),
                found: *v,
            }),
            Identity::Foreign(tables) => Some(StoreError::Foreign {
                store: store.to_string(),
                found: list_tables(tables),
            }),
            Identity::Damaged(what) => Some(StoreError::Damaged {
                store: store.to_string(),
                message: what.clone(),
            }),
            Identity::Empty | Identity::Ours(_) => None,
        }
    }
}

fn list_tables(tables: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = tables
        .iter()
        .take(SHOWN)
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if tables.len() > SHOWN {
        s.push_str(&format!(" and {} more", tables.len() - SHOWN));
    }
    s
}

/// `2^63 mod n`: with it, SQL computes `h mod n` of an unsigned 64-bit
/// hash stored as a signed integer (see [`shard_filter`]).
pub(crate) fn shard_params(shard: Option<(u32, u32)>) -> (i64, i64, i64) {
    let (k, n) = shard.unwrap_or((0, 1));
    let n = u64::from(n.max(1));
    (i64::from(k), n as i64, ((1u64 << 63) % n) as i64)
}

/// The shard hash of an item id as stored (the bits of
/// [`crate::hash::fnv1a`], as a signed integer).
pub(crate) fn shard_hash(item_id: &str) -> i64 {
    crate::hash::fnv1a(item_id.as_bytes()) as i64
}

/// `shard_hash` (the signed bits of an unsigned hash `h`) is in shard
/// `k` of `n` when `h mod n = k`; `$K, $N, $C` are [`shard_params`].
/// The parameters' names are the caller's (`?5` in SQLite, `$5` in
/// PostgreSQL).
pub(crate) fn shard_filter(k: &str, n: &str, c: &str) -> String {
    format!(
        "(((shard_hash & 9223372036854775807) % {n} + CASE WHEN shard_hash < 0 THEN {c} ELSE 0 END) % {n}) = {k}"
    )
}

pub(crate) fn corrupt(store: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        store: store.to_string(),
        message: e.to_string(),
    }
}

/// Picks the eval that `id` names among `(id, name)` pairs: an id, a
/// unique id prefix, or a unique eval name.
pub(crate) fn resolve_id(
    store: &str,
    id: &str,
    evals: Vec<(String, String)>,
) -> Result<String, StoreError> {
    if evals.iter().any(|(i, _)| i == id) {
        return Ok(id.to_string());
    }
    let ambiguous = |matches: Vec<&(String, String)>| StoreError::Ambiguous {
        store: store.to_string(),
        id: id.to_string(),
        matches: matches
            .iter()
            .map(|(i, n)| format!("{i} ({n})"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let by_prefix: Vec<&(String, String)> =
        evals.iter().filter(|(i, _)| i.starts_with(id)).collect();
    match by_prefix.as_slice() {
        [one] => return Ok(one.0.clone()),
        [] => {}
        _ => return Err(ambiguous(by_prefix)),
    }
    let by_name: Vec<&(String, String)> = evals.iter().filter(|(_, n)| n == id).collect();
    match by_name.as_slice() {
        [one] => Ok(one.0.clone()),
        [] => Err(StoreError::NoEval {
            store: store.to_string(),
            id: id.to_string(),
            hint: if evals.is_empty() {
                " (the store holds no evals)".into()
            } else {
                format!("; `redraft runs --store {store}` lists them")
            },
        }),
        _ => Err(ambiguous(by_name)),
    }
}

/// The models of an eval, as `redraft runs` and the report show them
/// (masked again: a record stored by an older redraft may hold a secret).
pub(crate) fn models_of(meta: &Value) -> String {
    meta.get("models")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", crate::redact::text(v.as_str().unwrap_or("?"))))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The tables, for a database's names of a 64-bit integer and a double.
pub(crate) fn schema(int: &str, real: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS redraft_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evals (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, workflow TEXT NOT NULL,
    created_at {int} NOT NULL, meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    eval_id TEXT NOT NULL, item_id TEXT NOT NULL, epoch {int} NOT NULL,
    seq {int} NOT NULL, item TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', worker TEXT, lease_until {int},
    attempts {int} NOT NULL DEFAULT 0,
    score {real}, passed {int}, result TEXT, finished_at {int},
    tokens {int}, calls {int}, cost_usd {real}, summary TEXT, events TEXT,
    shard_hash {int},
    PRIMARY KEY (eval_id, item_id, epoch));
CREATE INDEX IF NOT EXISTS units_by_status ON units (eval_id, status, seq);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, key TEXT NOT NULL, seq {int} NOT NULL,
    created_at {int} NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (kind, key, seq));
"
    )
}

/// What an archived eval's name gets (`--fresh`).
pub(crate) const ARCHIVED_SUFFIX: &str = " (replaced)";

/// The id an eval moves to when `--fresh` starts it over.
pub(crate) fn archived_id(id: &str, now_ms: i64) -> String {
    format!("{id}-replaced-{now_ms}")
}

pub(crate) const UNITS: &str = "SELECT item, epoch, status, result, CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM units WHERE eval_id = $1 ORDER BY seq";
pub(crate) const UNITS_WITH_EVENTS: &str = "SELECT item, epoch, status, result, summary, events FROM units WHERE eval_id = $1 ORDER BY seq";
pub(crate) const UNIT_WITH_EVENTS: &str = "SELECT item, epoch, status, result, summary, events FROM units WHERE eval_id = $1 AND item_id = $2 AND epoch = $3";

/// A result as stored: its JSON, its summary and its events.
pub(crate) fn encode(store: &str, r: &ItemResult) -> Result<(String, String, String), StoreError> {
    let json = serde_json::to_string(r).map_err(|e| corrupt(store, e))?;
    let (summary, events) = match &r.encoded {
        Some((s, e)) => (s.clone(), e.clone()),
        None => (
            serde_json::to_string(&r.summary).map_err(|e| corrupt(store, e))?,
            serde_json::to_string(&r.events).map_err(|e| corrupt(store, e))?,
        ),
    };
    Ok((json, summary, events))
}

/// A stored result, checked for its format before it is read as one: a
/// result of a newer redraft is refused (never misread), an unreadable one
/// names what is wrong.
fn read_result(store: &str, text: &str) -> Result<ItemResult, StoreError> {
    #[derive(Deserialize)]
    struct Format {
        format: Option<u32>,
    }
    let format = serde_json::from_str::<Format>(text)
        .map_err(|e| corrupt(store, e))?
        .format
        .unwrap_or(1);
    if format > crate::eval::RESULT_FORMAT {
        return Err(corrupt(
            store,
            format!(
                "a result of format {format}, newer than this redraft reads ({}); upgrade redraft",
                crate::eval::RESULT_FORMAT
            ),
        ));
    }
    serde_json::from_str(text).map_err(|e| corrupt(store, e))
}

pub(crate) fn unit_record(
    store: &str,
    item: &str,
    epoch: i64,
    status: String,
    result: Option<&str>,
    summary: Option<&str>,
    events: Option<&str>,
) -> Result<UnitRecord, StoreError> {
    let mut result: Option<ItemResult> = result.map(|r| read_result(store, r)).transpose()?;
    if let Some(r) = &mut result {
        if let Some(events) = events {
            r.events = serde_json::from_str(events).map_err(|e| corrupt(store, e))?;
        }
        if let Some(summary) = summary {
            r.summary = serde_json::from_str(summary).map_err(|e| corrupt(store, e))?;
        }
    }
    Ok(UnitRecord {
        item: serde_json::from_str(item).map_err(|e| corrupt(store, e))?,
        epoch: epoch as u32,
        status,
        result,
    })
}

/// Spend and outcomes of an eval's finished units.
pub(crate) const SPENT: &str = "SELECT
    CAST(COALESCE(SUM(tokens), 0) AS BIGINT), CAST(COALESCE(SUM(calls), 0) AS BIGINT),
    CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION),
    CAST(COALESCE(SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END), 0) AS BIGINT),
    CAST(COALESCE(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0) AS BIGINT)
    FROM units WHERE eval_id = $1 AND status IN ('done', 'failed')";

pub(crate) fn totals_from(
    tokens: i64,
    calls: i64,
    cost_usd: f64,
    done: i64,
    failed: i64,
) -> Totals {
    Totals {
        done: done as u64,
        failed: failed as u64,
        tokens: tokens as u64,
        calls: calls as u64,
        cost_usd,
        ..Totals::default()
    }
}

pub(crate) fn counts_from(rows: Vec<(String, i64)>) -> Counts {
    let mut c = Counts::default();
    for (status, n) in rows {
        match status.as_str() {
            "pending" => c.pending = n,
            "claimed" => c.claimed = n,
            "done" => c.done = n,
            "failed" => c.failed = n,
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored result of the first format: loop reports as JSON written
    /// by the summary, no `format` field.
    fn format_1_result(loops: &str) -> String {
        format!(
            r#"{{"item_id":"a","epoch":0,"status":"done","score":null,"output":"x","candidates":[],
            "run_status":"finished","tokens":3,"calls":1,"cost_usd":0.0,"wall_ms":1.0,"error":null,
            "worker":"w","finished_at":0,"loops":{loops},
            "reviews":[{{"node":"r","depth":1,"proposed":2,"accepted":1,"acceptance_rate":0.5}}]}}"#
        )
    }

    #[test]
    fn results_of_every_format_up_to_ours_are_read_typed_and_newer_ones_refused() {
        let loop_json = r#"[{"loop":"refine","rounds":2,"stop_reason":"until","changes":1,"wins":1,
            "overcorrection_risk_rate":null,"correction_success_rate":1.0,"improvement_slope":0.5,
            "over_budget_ratio":null,"per_round":[{"round":1,"win":false,"score":0.0,"tokens":5},
            {"round":2,"win":true,"score":1.0,"tokens":6}]}]"#;
        let r = read_result("s.db", &format_1_result(loop_json)).unwrap();
        assert_eq!(r.format, 1);
        assert_eq!(r.loops[0].loop_id, "refine");
        assert_eq!(r.loops[0].stop_reason, crate::summary::StopReason::Until);
        assert_eq!(r.loops[0].per_round[1].score, Some(1.0));
        assert_eq!(r.reviews[0].accepted, 1);
        // Written back, it is of the current format and reads the same.
        let mut now = r.clone();
        now.format = crate::eval::RESULT_FORMAT;
        let again = read_result("s.db", &serde_json::to_string(&now).unwrap()).unwrap();
        assert_eq!(again, now);
        // A newer format is refused, naming the store and the format.
        let newer = serde_json::to_string(&ItemResult {
            format: crate::eval::RESULT_FORMAT + 1,
            ..now
        })
        .unwrap();
        let e = read_result("s.db", &newer).unwrap_err().to_string();
        assert!(
            e.contains("s.db") && e.contains("newer than this redraft reads"),
            "{e}"
        );
        // A loop report that is not one is an error naming the store, not a panic.
        let e = read_result(
            "s.db",
            &format_1_result(r#"[{"loop":"refine","rounds":"two"}]"#),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("s.db") && e.contains("unreadable"), "{e}");
    }

    #[test]
    fn a_killed_child_is_dead_before_it_is_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = WorkerId {
            host: hostname(),
            pid: child.id(),
            started_ms: 0,
        };
        assert!(!me.is_dead_here());
        child.kill().unwrap();
        // Not reaped yet: a zombie until `wait`.
        let start = std::time::Instant::now();
        while !me.is_dead_here() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "still alive"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(me.is_dead_here());
        let elsewhere = WorkerId {
            host: "another-host".into(),
            pid: 1,
            started_ms: 0,
        };
        assert!(!elsewhere.is_dead_here(), "other hosts go by their leases");
        assert_eq!(WorkerId::parse(&me.to_string()), Some(me));
    }
}
