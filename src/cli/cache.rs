//! The response cache at the edge: the `--cache` flags of `run` and
//! `eval`, and `redraft cache stats|clear|prune`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::cache::{CacheError, CacheMode, DEFAULT_MAX_BYTES, ResponseCache};
use crate::eval::store::{self, StoreOptions};

fn parse_mode(s: &str) -> Result<CacheMode, String> {
    s.parse()
}

/// Where the response cache is and how a command uses it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CacheArgs {
    /// How model calls use the response cache: on (serve hits, store
    /// misses), off, read-only (serve hits, store nothing), refresh (call
    /// the model and store its reply). Default: on for `eval`, off for `run`.
    #[arg(long = "cache", value_name = "MODE", value_parser = parse_mode)]
    pub mode: Option<CacheMode>,
    #[command(flatten)]
    pub place: CachePlace,
}

/// Which response cache, and its size bound.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CachePlace {
    /// The response cache: a SQLite file, or postgres://… (default: the
    /// eval's --store when it is PostgreSQL, so workers share it; else
    /// $REDRAFT_CACHE/responses.db, by default ~/.cache/redraft/responses.db).
    #[arg(
        long = "cache-db",
        value_name = "PATH|URL",
        env = "REDRAFT_CACHE_DB",
        hide_env_values = true,
        global = true
    )]
    pub db: Option<String>,
    /// The most bytes of cached replies kept; the least recently used go
    /// first (500MB, 2GiB) [default: 2GiB].
    #[arg(long = "cache-max-size", value_name = "SIZE", global = true)]
    pub max_size: Option<String>,
}

impl CachePlace {
    /// The cache's location: the flag, else a PostgreSQL results store,
    /// else the default SQLite file.
    pub fn location(&self, results_store: Option<&str>) -> String {
        if let Some(db) = &self.db {
            return db.clone();
        }
        match results_store {
            Some(s) if store::is_postgres(s) => s.to_string(),
            _ => crate::cache::default_path().display().to_string(),
        }
    }

    pub fn max_bytes(&self) -> anyhow::Result<u64> {
        match &self.max_size {
            None => Ok(DEFAULT_MAX_BYTES),
            Some(v) => crate::units::parse_size(v)
                .filter(|b| *b > 0)
                .with_context(|| format!("--cache-max-size {v}: expected a size (500MB, 2GiB)")),
        }
    }

    fn open(
        &self,
        results_store: Option<&str>,
        opts: &StoreOptions,
    ) -> anyhow::Result<ResponseCache> {
        let location = self.location(results_store);
        Ok(store::open_cache(&location, self.max_bytes()?, opts)?)
    }
}

impl CacheArgs {
    /// The cache the flags name, unless the mode (or `default`) is off. A
    /// cache that cannot be opened is a warning, not an error: the command
    /// goes on and every call goes to the model.
    pub fn open(
        &self,
        default: CacheMode,
        results_store: Option<&str>,
        opts: &StoreOptions,
    ) -> anyhow::Result<(CacheMode, Option<Arc<ResponseCache>>)> {
        let mode = self.mode.unwrap_or(default);
        if mode == CacheMode::Off {
            return Ok((mode, None));
        }
        // A bad --cache-max-size is a usage error, not a cache failure.
        self.place.max_bytes()?;
        match self.place.open(results_store, opts) {
            Ok(cache) => Ok((mode, Some(Arc::new(cache)))),
            Err(e) => {
                eprintln!("warning: {e:#}; running without the response cache");
                Ok((CacheMode::Off, None))
            }
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CacheCommand {
    #[command(subcommand)]
    pub action: CacheAction,
    #[command(flatten)]
    pub place: CachePlace,
}

#[derive(Debug, clap::Subcommand)]
pub enum CacheAction {
    /// Entries, bytes and entries per model.
    Stats {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove every entry (a damaged SQLite cache file is replaced).
    Clear,
    /// Remove the least recently used entries down to --cache-max-size.
    Prune,
}

pub fn cache_command(args: CacheCommand) -> u8 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            super::EXIT_INVALID
        }
    }
}

fn run(args: CacheCommand) -> anyhow::Result<()> {
    let opts = StoreOptions::default();
    let location = args.place.location(None);
    let cache = match (args.place.open(None, &opts), &args.action) {
        (Ok(c), _) => c,
        // A damaged file is what `clear` is for: start a new one.
        (Err(e), CacheAction::Clear) if replaceable(&e, &location) => {
            for suffix in ["", "-wal", "-shm"] {
                let file = format!("{location}{suffix}");
                if Path::new(&file).exists() {
                    std::fs::remove_file(&file).with_context(|| format!("cannot remove {file}"))?;
                }
            }
            eprintln!("{location} was damaged ({e}); started a new cache");
            args.place.open(None, &opts)?
        }
        (Err(e), _) => return Err(e),
    };
    match args.action {
        CacheAction::Stats { json } => {
            let stats = cache.store().stats()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
                return Ok(());
            }
            println!("{}", stats.location);
            println!(
                "{} entries · {} of replies{}",
                stats.entries,
                human_bytes(stats.value_bytes),
                stats
                    .disk_bytes
                    .map(|b| format!(" · {} on disk", human_bytes(b)))
                    .unwrap_or_default()
            );
            for (model, n) in &stats.models {
                println!("  {n:>8}  {model}");
            }
        }
        CacheAction::Clear => {
            let n = cache.store().clear()?;
            println!("removed {n} entries from {}", cache.location());
        }
        CacheAction::Prune => {
            let max = args.place.max_bytes()?;
            let n = cache.store().prune(max)?;
            println!(
                "removed {n} entries from {} (bound {})",
                cache.location(),
                human_bytes(max)
            );
        }
    }
    Ok(())
}

/// A SQLite cache file that is damaged (not someone else's database).
fn replaceable(e: &anyhow::Error, location: &str) -> bool {
    !store::is_postgres(location)
        && matches!(
            e.downcast_ref::<CacheError>(),
            Some(CacheError::Damaged { .. })
        )
        && Path::new(location).is_file()
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
