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
fn is_postgres(location: &str) -> bool {
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
        return Ok(Box::new(super::postgres::PgStore::connect(location, opts)?));
        #[cfg(not(feature = "postgres"))]
        return Err(StoreError::NoPostgres(
            crate::redact::url(location).into_owned(),
        ));
    }
    Ok(Box::new(SqliteStore::open_with(Path::new(location), opts)?))
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

pub struct SqliteStore {
    conn: rusqlite::Connection,
    path: String,
    writable: bool,
    /// How long a statement waits for another process's lock.
    busy: Duration,
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

/// Puts the database in WAL mode (persistent in the file). Several
/// processes opening a new file at once race for the switch, which needs
/// the file to themselves and may fail at once with "database is locked":
/// they wait and try again until `deadline`.
fn sqlite_wal(conn: &rusqlite::Connection, deadline: std::time::Instant) -> rusqlite::Result<()> {
    let mut pause = Duration::from_millis(2);
    loop {
        let mode: rusqlite::Result<String> = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .and_then(|m: String| {
                if m.eq_ignore_ascii_case("wal") {
                    Ok(m)
                } else {
                    conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                }
            });
        match mode {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
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
        sqlite_wal(&conn, std::time::Instant::now() + busy).map_err(db)?;
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
        let mut stmt = self
            .conn
            .prepare(if full { UNITS_WITH_EVENTS } else { UNITS })
            .map_err(|e| sqlite_error(&self.path, e, self.busy))?;
        let rows = stmt
            .query_map([eval], |r| {
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

/// What an archived eval's name gets (`--fresh`).
pub(crate) const ARCHIVED_SUFFIX: &str = " (replaced)";

/// The id an eval moves to when `--fresh` starts it over.
pub(crate) fn archived_id(id: &str, now_ms: i64) -> String {
    format!("{id}-replaced-{now_ms}")
}

pub(crate) const UNITS: &str = "SELECT item, epoch, status, result, CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM units WHERE eval_id = $1 ORDER BY seq";
pub(crate) const UNITS_WITH_EVENTS: &str = "SELECT item, epoch, status, result, summary, events FROM units WHERE eval_id = $1 ORDER BY seq";

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

pub(crate) fn unit_record(
    store: &str,
    item: &str,
    epoch: i64,
    status: String,
    result: Option<&str>,
    summary: Option<&str>,
    events: Option<&str>,
) -> Result<UnitRecord, StoreError> {
    let mut result: Option<ItemResult> = result
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| corrupt(store, e))?;
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
